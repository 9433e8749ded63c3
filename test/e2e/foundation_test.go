package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

func TestHyperdRefusesRoot(t *testing.T) {
	n := newNode(t, "")
	cmd := n.hyperdCmd()
	cmd.SysProcAttr = nil // run as root
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("hyperd ran as root without --allow-root; output:\n%s", out)
	}
	if !strings.Contains(string(out), "refusing to run as root") || !strings.Contains(string(out), "--allow-root") {
		t.Fatalf("unclear refusal: %s", out)
	}
}

func TestHyperdRefusesUntrustedConfig(t *testing.T) {
	cases := map[string]func(n *node){
		"group-writable": func(n *node) { must(t, os.Chmod(n.config, 0o664)) },
		"world-writable": func(n *node) { must(t, os.Chmod(n.config, 0o646)) },
		"not root-owned": func(n *node) { uid, gid := ensureUser(t); must(t, os.Chown(n.config, uid, gid)) },
		"symlink": func(n *node) {
			must(t, os.Rename(n.config, n.config+".real"))
			must(t, os.Symlink(n.config+".real", n.config))
		},
	}
	rules := map[string]string{
		"group-writable": "group- or world-writable", "world-writable": "group- or world-writable",
		"not root-owned": "not owned by root", "symlink": "symlink",
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			n := newNode(t, "")
			spoil(n)
			out, err := n.hyperdCmd().CombinedOutput()
			if err == nil {
				t.Fatalf("hyperd accepted a %s config; output:\n%s", name, out)
			}
			if !strings.Contains(string(out), n.config) || !strings.Contains(string(out), rules[name]) {
				t.Fatalf("message does not name the file and the rule %q: %s", rules[name], out)
			}
			if _, err := os.Stat(n.socket); err == nil {
				t.Fatal("hyperd opened its socket despite the untrusted config")
			}
		})
	}
}

func TestHyperdRejectsBadConfig(t *testing.T) {
	n := newNode(t, "\n[budget]\nmem_max = \"4GB\"\n")
	out, err := n.hyperdCmd().CombinedOutput()
	if err == nil || !strings.Contains(string(out), "budget.mem_max") || !strings.Contains(string(out), n.config) {
		t.Fatalf("want an error naming the file and budget.mem_max; got %v: %s", err, out)
	}
}

func TestFreshNode(t *testing.T) {
	n := newNode(t, "\n[budget]\nmem_max = \"3GiB\"\n")
	n.start()

	t.Run("node ls shows the local node", func(t *testing.T) {
		out, stderr, code := n.hyper("node", "ls")
		if code != 0 || !strings.Contains(out, n.name) || !strings.Contains(out, "alive") {
			t.Fatalf("hyper node ls: code %d\n%s%s", code, out, stderr)
		}
		out, _, code = n.hyper("-o", "json", "node", "get", n.name)
		var node struct {
			Name   string `json:"name"`
			Alive  bool   `json:"alive"`
			Arch   string `json:"arch"`
			Budget struct {
				MemTotal string `json:"mem_total_bytes"`
				CPUs     int    `json:"cpus"`
			} `json:"budget"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &node) != nil || node.Name != n.name || !node.Alive || node.Arch != "ARCH_X86_64" ||
			node.Budget.MemTotal != "3221225472" || node.Budget.CPUs < 1 {
			t.Fatalf("hyper node get: code %d, %+v\n%s", code, node, out)
		}
	})

	t.Run("cordon and uncordon", func(t *testing.T) {
		out, _, code := n.hyper("node", "cordon", n.name)
		if code != 0 || !strings.Contains(out, "cordoned") {
			t.Fatalf("cordon: %d %s", code, out)
		}
		out, _, code = n.hyper("node", "uncordon", n.name)
		if code != 0 || strings.Contains(out, "cordoned") {
			t.Fatalf("uncordon: %d %s", code, out)
		}
		_, stderr, code := n.hyper("node", "cordon", "no-such-node")
		if code == 0 || !strings.Contains(stderr, "not_found") {
			t.Fatalf("cordon unknown node: %d %s", code, stderr)
		}
	})

	t.Run("plain HTTP JSON over the unix socket", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", n.socket)
		}}}
		resp, err := hc.Post("http://hyperd/hyper.v1.Hyper/ListVms", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var got struct {
			Vms []json.RawMessage `json:"vms"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || len(got.Vms) != 0 {
			t.Fatalf("ListVms: want 200 and an empty list; got %d %s", resp.StatusCode, body)
		}
		resp, err = hc.Post("http://hyperd/hyper.v1.Hyper/GetVm", "application/json", strings.NewReader(`{"id":"bogus"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "invalid_argument") || !strings.Contains(string(body), "id") {
			t.Fatalf("GetVm(bogus): %d %s", resp.StatusCode, body)
		}
	})

	t.Run("gRPC reflection and health", func(t *testing.T) {
		conn, err := grpc.NewClient("unix://"+n.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := reflectpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectpb.ServerReflectionRequest{MessageRequest: &reflectpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		if !contains(names, "hyper.v1.Hyper") {
			t.Fatalf("reflection lists %v; want hyper.v1.Hyper", names)
		}
		_ = stream.CloseSend()
		h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "hyper.v1.Hyper"})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health: %v %v", h, err)
		}
	})

	t.Run("capabilities not yet built say so", func(t *testing.T) {
		_, stderr, code := n.hyper("vm", "fork", "vaaaaaaaaaaaaaaaa")
		if code == 0 || !strings.Contains(stderr, "unimplemented") || !strings.Contains(stderr, "ForkVm") {
			t.Fatalf("fork: code %d: %s", code, stderr)
		}
	})

	t.Run("bad requests name the field", func(t *testing.T) {
		_, stderr, code := n.hyper("vm", "get", "not-a-vm")
		if code == 0 || !strings.Contains(stderr, "invalid_argument") || !strings.Contains(stderr, "id:") {
			t.Fatalf("vm get: %d %s", code, stderr)
		}
		_, stderr, code = n.hyper("vm", "get", "vaaaaaaaaaaaaaaaa")
		if code == 0 || !strings.Contains(stderr, "not_found") {
			t.Fatalf("vm get unknown: %d %s", code, stderr)
		}
		_, stderr, code = n.hyper("vm", "create", "--image", "x", "--type", "huge")
		if code == 0 || !strings.Contains(stderr, "--type") {
			t.Fatalf("vm create --type huge: %d %s", code, stderr)
		}
		_, stderr, code = n.hyper("-o", "yaml", "node", "ls")
		if code == 0 || !strings.Contains(stderr, "--output") {
			t.Fatalf("-o yaml: %d %s", code, stderr)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
