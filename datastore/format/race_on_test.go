//go:build race

package format

// The race detector adds allocations, so allocation counts are not checked.
const raceEnabled = true
