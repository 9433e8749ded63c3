package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testNonce = "00112233445566778899aabbccddeeff"

func TestHelloScanner(t *testing.T) {
	hello := helloPrefix + testNonce + "\n"
	stream := "garbage\x00" + helloPrefix + "nothex!!nothex!!nothex!!nothex!!\n" + hello + "yamux bytes"
	// Every split of the stream into two chunks finds the same line.
	for cut := 0; cut <= len(stream); cut++ {
		var s HelloScanner
		var rest []byte
		ready, r, ok := s.Feed([]byte(stream[:cut]))
		if ok {
			rest = append(r, stream[cut:]...)
		} else {
			ready, rest, ok = s.Feed([]byte(stream[cut:]))
		}
		if !ok || string(ready) != readyPrefix+testNonce+"\n" || string(rest) != "yamux bytes" {
			t.Fatalf("cut %d: ok %v ready %q rest %q", cut, ok, ready, rest)
		}
	}
	var s HelloScanner
	if _, _, ok := s.Feed([]byte(strings.Repeat("HYPER-AGENT/1 HELLO ", 10))); ok {
		t.Error("found a hello without a nonce")
	}
}

func TestAcceptHello(t *testing.T) {
	var answer bytes.Buffer
	rest, err := AcceptHello(strings.NewReader("junk"+helloPrefix+testNonce+"\nafter"), &answer)
	if err != nil || string(rest) != "after" || answer.String() != readyPrefix+testNonce+"\n" {
		t.Errorf("rest %q answer %q err %v", rest, answer.String(), err)
	}
	if _, err := AcceptHello(strings.NewReader("no hello here"), io.Discard); err == nil {
		t.Error("no error without a hello")
	}
}

// TestHandshakeSkipsStaleBytes plays a guest that first sends leftovers
// (including a READY for another nonce), then answers properly.
func TestHandshakeSkipsStaleBytes(t *testing.T) {
	host, guest := connPair(t)
	defer host.Close()
	go func() {
		defer guest.Close()
		io.WriteString(guest, "\x00\x01stale "+readyPrefix+testNonce+"\n")
		var s HelloScanner
		buf := make([]byte, 256)
		for {
			n, err := guest.Read(buf)
			if ready, _, ok := s.Feed(buf[:n]); ok {
				guest.Write(append(ready, "session"...))
				io.Copy(io.Discard, guest)
				return
			}
			if err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := handshake(ctx, host, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("session"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "session" {
		t.Errorf("after the handshake read %q, %v", got, err)
	}
}

func TestHandshakeTimesOut(t *testing.T) {
	host, guest := connPair(t)
	defer host.Close()
	defer guest.Close()
	go io.Copy(io.Discard, guest)
	_, err := handshake(context.Background(), host, time.Now().Add(200*time.Millisecond))
	if !errors.Is(err, ErrNotReady) {
		t.Errorf("error %v, want ErrNotReady", err)
	}
}

// connPair returns the two ends of a unix socketpair (buffered, unlike
// net.Pipe, so both ends can write first).
func connPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}
