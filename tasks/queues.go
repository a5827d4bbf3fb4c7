package tasks

import (
	"slices"
	"strings"
)

// Queues per datastore: a task goes to the queue of the stores it needs,
// "pbsq:<store>", or "pbsq:<a>+<b>" (sorted) for a task on two stores
// (sync), and a worker listens to the queues of the stores it has, so a
// task only ever reaches a worker that can open its stores. Store names
// cannot contain '+' or ':' (name.ValidateStore), so the names are
// unambiguous. Queue ("pbsq") is the single queue of earlier versions and
// of library users that do not route by store; every worker still drains
// it.

// QueueFor is the queue of a payload's stores.
func QueueFor(p Payload) string {
	st := slices.Clone(p.Stores())
	slices.Sort(st)
	st = slices.Compact(st)
	return Queue + ":" + strings.Join(st, "+")
}

// StoreQueues lists the queues a worker with these stores serves: one per
// store and one per pair of stores.
func StoreQueues(stores []string) []string {
	st := slices.Clone(stores)
	slices.Sort(st)
	st = slices.Compact(st)
	var qs []string
	for i, a := range st {
		qs = append(qs, Queue+":"+a)
		for _, b := range st[i+1:] {
			qs = append(qs, Queue+":"+a+"+"+b)
		}
	}
	return qs
}

// IsQueue reports whether q is one of pbsq's queues.
func IsQueue(q string) bool { return q == Queue || strings.HasPrefix(q, Queue+":") }

// QueueStores returns the stores a queue is for (none for Queue).
func QueueStores(q string) []string {
	rest, ok := strings.CutPrefix(q, Queue+":")
	if !ok || rest == "" {
		return nil
	}
	return strings.Split(rest, "+")
}
