package publish

import (
	"strings"
	"testing"
	"time"

	"github.com/mqsidecar/mqsidecar/internal/settings"
)

func TestTxnSettingsCheck(t *testing.T) {
	var ck settings.Checker
	TxnDefaults().Check(&ck)
	if err := ck.Err("publish"); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := TxnSettings{CheckURL: "ftp://x/check", Timeout: time.Millisecond, MaxBackoff: 0}
	ck = settings.Checker{}
	bad.Check(&ck)
	err := ck.Err("publish")
	for _, key := range []string{"publish.transactions.check_url", "publish.transactions.timeout", "publish.transactions.max_backoff"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("bad settings: %v, want a problem with %s", err, key)
		}
	}
}
