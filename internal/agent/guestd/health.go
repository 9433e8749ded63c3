package guestd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

const (
	defaultShutdownGrace = 5 * time.Second
	maxShutdownGrace     = 5 * time.Minute
	// shutdownDelay lets the Shutdown answer leave before the power-off
	// starts tearing processes and the channel down.
	shutdownDelay = 200 * time.Millisecond
)

// Health reports the guest's state.
func (s *Server) Health(context.Context, *connect.Request[agentv1.HealthRequest]) (*connect.Response[agentv1.HealthResponse], error) {
	res := &agentv1.HealthResponse{
		Ok:     true,
		VmId:   s.cfg.VMID,
		Main:   s.MainStatus(),
		Frozen: s.freezer.isFrozen(),
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		res.Uptime = durationpb.New(time.Duration(si.Uptime) * time.Second)
		// The kernel's fixed point: 1 << SI_LOAD_SHIFT (16) is 1.0.
		res.Load1 = float64(si.Loads[0]) / 65536
		res.Load5 = float64(si.Loads[1]) / 65536
		res.Load15 = float64(si.Loads[2]) / 65536
	}
	if total, avail, err := readMeminfo("/proc/meminfo"); err == nil {
		res.MemoryTotalBytes, res.MemoryAvailableBytes = total, avail
	} else {
		s.log.Warn("health: memory", "err", err)
	}
	return connect.NewResponse(res), nil
}

// readMeminfo returns MemTotal and MemAvailable in bytes.
func readMeminfo(path string) (total, avail uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		var dst *uint64
		switch string(f[0]) {
		case "MemTotal:":
			dst, haveTotal = &total, true
		case "MemAvailable:":
			dst, haveAvail = &avail, true
		default:
			continue
		}
		kb, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %s: %w", path, f[0], err)
		}
		*dst = kb << 10
	}
	if !haveTotal || !haveAvail {
		return 0, 0, fmt.Errorf("%s: no MemTotal or MemAvailable", path)
	}
	return total, avail, nil
}

// Shutdown answers, then powers the guest off (or reboots it).
func (s *Server) Shutdown(_ context.Context, req *connect.Request[agentv1.ShutdownRequest]) (*connect.Response[agentv1.ShutdownResponse], error) {
	if s.cfg.PowerOff == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("shutdown: this agent cannot power off"))
	}
	grace := defaultShutdownGrace
	if g := req.Msg.GetGrace(); g != nil {
		if err := g.CheckValid(); err != nil || g.AsDuration() < 0 || g.AsDuration() > maxShutdownGrace {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("grace: %v is not between 0 and %v", g.AsDuration(), maxShutdownGrace))
		}
		grace = g.AsDuration()
	}
	reboot := req.Msg.GetReboot()
	s.shutdown.Do(func() {
		s.log.Info("shutdown requested", "reboot", reboot, "grace", grace)
		s.bg.Go(func() {
			t := time.NewTimer(shutdownDelay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.closing:
				return
			}
			// A frozen writable disk would block the final sync forever.
			s.freezer.thaw()
			s.cfg.PowerOff(reboot, grace)
		})
	})
	return connect.NewResponse(&agentv1.ShutdownResponse{}), nil
}
