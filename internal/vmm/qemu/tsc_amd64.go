package qemu

import (
	"slices"
	"time"
)

func rdtsc() uint64

// HostTSCkHz measures the host's TSC frequency against the monotonic clock.
//
// Under TCG a guest's TSC is the host's TSC, and a guest kernel that has to
// calibrate it does so against the emulated PIT in tight timing windows: on
// a loaded host every window is missed, the kernel marks the TSC unusable
// and then hangs calibrating its delay loop. Handing it the frequency
// (tsc_early_khz=) skips all of that. Three 20 ms samples, median taken.
func HostTSCkHz() int64 {
	var samples []int64
	for range 3 {
		t0, c0 := time.Now(), rdtsc()
		time.Sleep(20 * time.Millisecond)
		t1, c1 := time.Now(), rdtsc()
		if ns := t1.Sub(t0).Nanoseconds(); ns > 0 && c1 > c0 {
			samples = append(samples, int64((c1-c0)*1e6/uint64(ns)))
		}
	}
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	return samples[len(samples)/2]
}
