package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// message is one copy the producer sends. Producer duplicates are copies with the same ID.
type message struct {
	ID  string
	Key string // "" = no key
	Dup bool   // a second copy of an ID produced earlier
	// Partition is the target partition for producers that choose one (-1 = by key).
	Partition int32
}

// workload builds n unique messages spread over keys, with dupShare of them sent twice. Half
// of the duplicates follow right behind their original (while it is likely in flight), half
// come much later (after it likely completed). The order of the slice is the produce order.
func workload(rng *rand.Rand, prefix string, n, keys int, dupShare float64) []message {
	out := make([]message, 0, n+int(float64(n)*dupShare)+1)
	var late []message
	for i := range n {
		m := message{ID: fmt.Sprintf("%s-%05d", prefix, i), Partition: -1}
		if keys > 0 {
			m.Key = fmt.Sprintf("k%03d", rng.IntN(keys))
		}
		out = append(out, m)
		if rng.Float64() < dupShare {
			d := m
			d.Dup = true
			if rng.IntN(2) == 0 {
				out = append(out, d)
			} else {
				late = append(late, d)
			}
		}
		// Release late duplicates a few hundred messages later.
		if len(late) > 0 && rng.IntN(30) == 0 {
			out = append(out, late[0])
			late = late[1:]
		}
	}
	return append(out, late...)
}

// report is what the checker found; see the package doc for the definitions.
type report struct {
	Produced    int // copies, duplicates included
	Unique      int
	Delivered   int
	Lost        int
	Pushes      int
	FlaggedDups int
	SilentDups  int
	// OrphanRepeats: unflagged pushes after a 2xx that a killed sidecar had sent before it
	// died (the app handled them after the flagged redelivery): reported, not a failure.
	OrphanRepeats    int
	UnflaggedRepeats int
	OrderViolations  int
	Concurrent       int
	Unknown          int // pushes of IDs that were never produced
	KeyMismatch      int // ce-partitionkey differs from the produced key
	Problems         []string
}

// check computes the report from what was produced and what the app received. checkOrder
// enables the per-key order check (brokers/modes that promise it); checkKeys compares
// ce-partitionkey with the produced key.
func check(produced []message, pushes []push, concurrent []string, checkOrder, checkKeys bool) report {
	r := report{Produced: len(produced), Pushes: len(pushes), Concurrent: len(concurrent)}
	const maxProblems = 8
	problem := func(format string, args ...any) {
		if len(r.Problems) < maxProblems {
			r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		}
	}
	for i, id := range concurrent {
		if i < 3 {
			var all []string
			for _, p := range pushes {
				if p.ID == id {
					all = append(all, fmt.Sprintf("[#%d by %s at %s: attempt %d redelivered=%v status %d]", p.Seq, p.From, p.At.Format("15:04:05.000000"), p.Attempt, p.Redelivered, p.Status))
				}
			}
			problem("concurrent pushes of %s: %s", id, strings.Join(all, " "))
		}
	}

	// Production order per key: the position of each ID's first copy.
	type prodInfo struct {
		key string
		pos int
	}
	info := map[string]prodInfo{}
	byKey := map[string][]string{}
	for i, m := range produced {
		if _, ok := info[m.ID]; ok {
			continue
		}
		info[m.ID] = prodInfo{key: m.Key, pos: i}
		byKey[m.Key] = append(byKey[m.Key], m.ID)
	}
	r.Unique = len(info)

	firstOK := map[string]int{} // ID → Seq of its first 2xx
	seen := map[string]bool{}
	history := map[string]string{} // ID → its earlier pushes, for the problem lines
	sorted := append([]push(nil), pushes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Seq < sorted[j].Seq })
	for _, p := range sorted {
		pi, known := info[p.ID]
		if !known {
			r.Unknown++
			problem("push of unknown ID %q", p.ID)
			continue
		}
		if checkKeys && p.Key != pi.key {
			r.KeyMismatch++
			problem("%s: ce-partitionkey %q, produced with key %q", p.ID, p.Key, pi.key)
		}
		switch {
		case seen[p.ID] && p.Orphan && !p.Redelivered:
			// Sent by a sidecar before it was killed, handled by the app after another
			// copy: the sidecar decided nothing after its death (see markOrphans).
			r.OrphanRepeats++
		default:
			if _, done := firstOK[p.ID]; done {
				if p.Redelivered {
					r.FlaggedDups++
				} else {
					r.SilentDups++
					problem("silent duplicate: %s pushed again (attempt %d, push #%d by %s at %s from p%s@%s) after a 2xx, without ce-redelivered; before: %s", p.ID, p.Attempt, p.Seq, p.From, p.At.Format("15:04:05.000000"), p.Partition, p.Offset, history[p.ID])
				}
			}
			if seen[p.ID] && !p.Redelivered {
				r.UnflaggedRepeats++
				problem("unflagged repeat: %s pushed again (attempt %d, push #%d) without ce-redelivered", p.ID, p.Attempt, p.Seq)
			}
		}
		seen[p.ID] = true
		history[p.ID] += fmt.Sprintf("[#%d by %s at %s from p%s@%s: attempt %d redelivered=%v status %d orphan=%v] ", p.Seq, p.From, p.At.Format("15:04:05.000000"), p.Partition, p.Offset, p.Attempt, p.Redelivered, p.Status, p.Orphan)
		if p.Status >= 200 && p.Status < 300 {
			if _, done := firstOK[p.ID]; !done {
				firstOK[p.ID] = p.Seq
			}
		}
	}
	r.Delivered = len(firstOK)
	var lost []string
	for id := range info {
		if _, ok := firstOK[id]; !ok {
			lost = append(lost, id)
		}
	}
	r.Lost = len(lost)
	sort.Strings(lost)
	if len(lost) > 0 {
		problem("lost (never answered 2xx): %d IDs, e.g. %s", len(lost), strings.Join(lost[:min(5, len(lost))], " "))
	}

	if checkOrder {
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "" {
				continue // unkeyed messages promise no order of their own
			}
			maxSeq, maxID := -1, ""
			for _, id := range byKey[k] { // production order
				s, ok := firstOK[id]
				if !ok {
					continue // lost, counted above
				}
				if s < maxSeq {
					r.OrderViolations++
					problem("order: key %s: %s (produced later) first delivered at push #%d, before %s (push #%d)", k, id, s, maxID, maxSeq)
				}
				if s > maxSeq {
					maxSeq, maxID = s, id
				}
			}
		}
	}
	return r
}

// failures returns what is wrong with r for the guarantees every e2e test checks.
func (r report) failures() []string {
	var f []string
	if r.Lost != 0 {
		f = append(f, fmt.Sprintf("lost %d", r.Lost))
	}
	if r.SilentDups != 0 {
		f = append(f, fmt.Sprintf("silent duplicates %d", r.SilentDups))
	}
	if r.UnflaggedRepeats != 0 {
		f = append(f, fmt.Sprintf("unflagged repeats %d", r.UnflaggedRepeats))
	}
	if r.OrderViolations != 0 {
		f = append(f, fmt.Sprintf("order violations %d", r.OrderViolations))
	}
	if r.Concurrent != 0 {
		f = append(f, fmt.Sprintf("concurrent same-ID pushes %d", r.Concurrent))
	}
	if r.Unknown != 0 {
		f = append(f, fmt.Sprintf("unknown IDs pushed %d", r.Unknown))
	}
	if r.KeyMismatch != 0 {
		f = append(f, fmt.Sprintf("ce-partitionkey mismatches %d", r.KeyMismatch))
	}
	return f
}

// requireClean fails the test if the report breaks a guarantee.
func (r report) requireClean(t testing.TB) {
	t.Helper()
	if f := r.failures(); len(f) > 0 {
		t.Errorf("guarantees broken: %s\n%s", strings.Join(f, ", "), strings.Join(r.Problems, "\n"))
	}
}

// row is one line of the summary table.
type row struct {
	Broker   string
	Test     string
	Kills    int
	Order    bool // the order check applied
	Took     time.Duration
	Report   report
	Comments string
}

// printTable prints rows with t.Log and to stdout (so CI logs show it even without -v
// filtering of test logs).
func printTable(t testing.TB, rows ...row) {
	t.Helper()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "broker\ttest\tmessages\tunique\tpushes\tkills\tlost\tdup flagged\tdup silent\torder viol\tconcurrent\tduration\tnotes")
	for _, r := range rows {
		order := fmt.Sprint(r.Report.OrderViolations)
		if !r.Order {
			order = "n/a"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t%s\n",
			r.Broker, r.Test, r.Report.Produced, r.Report.Unique, r.Report.Pushes, r.Kills, r.Report.Lost,
			r.Report.FlaggedDups, r.Report.SilentDups, order, r.Report.Concurrent, r.Took.Round(100*time.Millisecond), r.Comments)
	}
	tw.Flush()
	t.Log("\n" + b.String())
	fmt.Fprint(os.Stdout, b.String())
}
