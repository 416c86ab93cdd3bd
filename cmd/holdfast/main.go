// Command holdfast is the holdfast agent and command-line client.
//
// The command tree lives in this package; every command parses its flags and
// calls one function in an internal package. Exit codes are documented in
// docs/EXIT_CODES.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	code := 0
	if err != nil {
		code = exitCode(ctx, err)
		fmt.Fprintln(os.Stderr, "holdfast:", err)
	}
	stop()
	os.Exit(code)
}

// ExitError carries a documented exit code out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Exit codes, after restic's: 0 ok, 1 fatal, 3 partial, 10 no repository,
// 11 lock failed, 12 wrong password, 130 interrupted.
const (
	exitFatal       = 1
	exitPartial     = 3
	exitNoRepo      = 10
	exitLocked      = 11
	exitWrongPass   = 12
	exitInterrupted = 130
)

func exitCode(ctx context.Context, err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return exitInterrupted
	}
	return exitFatal
}
