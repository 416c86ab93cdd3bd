// Package buildinfo reports the version of the running holdfast binary.
//
// Version and Commit are set at link time with
// -ldflags "-X github.com/holdfast/holdfast/internal/buildinfo.Version=v0.1.0";
// when they are not, they are read from the module's embedded build info.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version is the release version of this binary ("dev" when unset).
var Version = "dev"

// Commit is the VCS revision this binary was built from.
var Commit = ""

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	Dirty     bool   `json:"dirty,omitempty"`
}

// Get returns the build information of the running binary.
func Get() Info {
	in := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if in.Commit == "" {
					in.Commit = s.Value
				}
			case "vcs.modified":
				in.Dirty = s.Value == "true"
			}
		}
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	return in
}

// String is the one-line form printed by `holdfast version`.
func (i Info) String() string {
	s := "holdfast " + i.Version + " (commit " + i.Commit
	if i.Dirty {
		s += ", modified"
	}
	return s + ", " + i.GoVersion + ")"
}
