package agent

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The host finds READY behind stale bytes of an earlier session, and the
// bytes the guest sent right after it reach the session, in order.
func TestHandshakeKeepsBytesAfterReady(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		line, err := bufio.NewReader(guest).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, helloPrefix) {
			return
		}
		nonce := strings.TrimSpace(strings.TrimPrefix(line, helloPrefix))
		io.WriteString(guest, "stale output of a previous host\n"+readyPrefix+nonce+"\nsession bytes")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := handshake(ctx, host, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("session bytes"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "session bytes" {
		t.Fatalf("after READY: %q, %v", got, err)
	}
}
