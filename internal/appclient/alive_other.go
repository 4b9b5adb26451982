//go:build !unix

package appclient

// alive cannot peek at a socket without blocking here: the connection is reused as long
// as nothing is buffered, and a connection the app closed while idle makes the push fail,
// a counted retry (as for TLS on every platform).
func alive(pc *pconn) bool {
	return pc.br.Buffered() == 0
}
