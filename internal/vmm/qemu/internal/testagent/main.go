// Command testagent is a stand-in for hyper-agent in the QEMU driver's
// boot tests: stage 1 is the real guestinit; stage 2 starts the image's
// command with its output on the console and answers JSON-line exec
// requests on the hyper.agent virtio-serial port. It lets the driver and
// the init be tested without the agent's RPC stack.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/guestinit"
)

// Request is one line from the host.
type Request struct {
	Argv []string `json:"argv"`
}

// Reply is one line to the host.
type Reply struct {
	Output string `json:"output"`
	Code   int    `json:"code"`
	Error  string `json:"error,omitempty"`
}

func main() {
	if guestinit.IsStage1() {
		guestinit.Stage1()
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "testagent: %v\n", err)
	}
	poweroff()
}

func run() error {
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	data, err := os.ReadFile(guestcfg.RunConfigPath)
	if err != nil {
		return err
	}
	var vm guestcfg.VM
	if err := json.Unmarshal(data, &vm); err != nil {
		return err
	}
	fmt.Printf("testagent: stage 2 as pid %d for vm %s\n", os.Getpid(), vm.ID)
	if argv := append(vm.Image.Entrypoint, vm.Image.Cmd...); len(argv) > 0 {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.Env = vm.Image.Env
		if err := cmd.Start(); err != nil {
			fmt.Printf("testagent: start image cmd: %v\n", err)
		} else {
			go cmd.Wait()
		}
	}
	port, err := findPort()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	fmt.Printf("testagent: serving on %s\n", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var req Request
		var rep Reply
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil || len(req.Argv) == 0 {
			rep.Error = fmt.Sprintf("bad request %q", sc.Text())
		} else if req.Argv[0] == "poweroff" {
			unix.Sync()
			json.NewEncoder(f).Encode(Reply{})
			return nil
		} else {
			out, err := exec.Command(req.Argv[0], req.Argv[1:]...).CombinedOutput()
			rep.Output = string(out)
			if ee, ok := err.(*exec.ExitError); ok {
				rep.Code = ee.ExitCode()
			} else if err != nil {
				rep.Error = err.Error()
			}
		}
		if err := json.NewEncoder(f).Encode(rep); err != nil {
			return err
		}
	}
	return fmt.Errorf("port %s closed: %v", port, sc.Err())
}

func findPort() (string, error) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && strings.TrimSpace(string(b)) == guestcfg.AgentPortName {
				return "/dev/" + filepath.Base(filepath.Dir(n)), nil
			}
		}
	}
	return "", fmt.Errorf("no virtio port named %s", guestcfg.AgentPortName)
}

func poweroff() {
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}
