package image_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every load must end the goroutines it starts (the ext4 writer, the
// hashers), on success, failure and cancellation alike. Idle keep-alive
// connections of the shared HTTP transport are not the loader's.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}
