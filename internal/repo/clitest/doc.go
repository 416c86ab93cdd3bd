// Package clitest holds end-to-end tests of the backup repository that run
// the real holdfast binary as a subprocess: the command workflow, exit
// codes, kill -9 in the middle of a backup, unreadable files and a full
// disk. It has no non-test code.
package clitest
