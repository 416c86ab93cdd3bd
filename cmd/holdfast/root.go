package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"
)

// globalOptions are the flags every command has.
type globalOptions struct {
	logFormat string
	logLevel  string
	json      bool
}

var globals globalOptions

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "holdfast",
		Short:         "holdfast is a data-protection fabric: backup, CDP, VM DR, failover and bulk transfer",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("log-level") && !daemonCommands[cmd.CommandPath()] {
				// One-shot commands print their results; their logs are
				// for problems only unless asked for.
				globals.logLevel = "warn"
			}
			return setupLogging(cmd.ErrOrStderr())
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&globals.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&globals.logLevel, "log-level", "info", "log level: debug, info, warn or error (one-shot commands default to warn)")
	pf.BoolVar(&globals.json, "json", false, "print machine-readable JSON output")

	// Each command group lives in its own file as newXCommand.
	root.AddCommand(
		newVersionCommand(),
		newCpCommand(), newServeCommand(),
		newAgentCommand(),
		newClusterCommand(),
		newStatusCommand(),
		newQuickstartCommand(),
		newVolumeCommand(),
		newNetdiagCommand(),
		newLabCommand(),
		newPoolCommand(),
		newSLOCommand(),
	)
	root.AddCommand(newRepoCommands()...) // backup repository: cmd_repo.go
	return root
}

// daemonCommands log at info by default; every other command at warn.
// holdfast cp is among them because its service-level changes are logged.
var daemonCommands = map[string]bool{
	"holdfast agent":         true,
	"holdfast cp":            true,
	"holdfast serve":         true,
	"holdfast lab up":        true,
	"holdfast volume serve":  true,
	"holdfast netdiag proxy": true,
}

func setupLogging(w io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(globals.logLevel)); err != nil {
		return fmt.Errorf("parsing --log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch globals.logFormat {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return fmt.Errorf("unknown --log-format %q (want text or json)", globals.logFormat)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// logger returns the process logger configured by the global flags.
func logger() *slog.Logger { return slog.Default() }

// printJSON writes v as indented JSON to w.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
