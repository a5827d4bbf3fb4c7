package worker

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hibiken/asynq"

	"github.com/pbsq/pbsq/tasks"
)

// Queues lists pbsq's queues in Redis (per-store ones and the legacy
// single queue), sorted.
func Queues(ins *asynq.Inspector) ([]string, error) {
	all, err := ins.Queues()
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	qs := slices.DeleteFunc(all, func(q string) bool { return !tasks.IsQueue(q) })
	slices.Sort(qs)
	return qs, nil
}

// FindTask looks task id up in every pbsq queue, so that users never name
// the queue; asynq.ErrTaskNotFound when no queue has it.
func FindTask(ins *asynq.Inspector, id string) (*asynq.TaskInfo, error) {
	qs, err := Queues(ins)
	if err != nil {
		return nil, err
	}
	for _, q := range qs {
		info, err := ins.GetTaskInfo(q, id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			continue
		}
		return info, err
	}
	return nil, fmt.Errorf("task %q: %w", id, asynq.ErrTaskNotFound)
}

// workerQueues are the queues a worker with these stores listens to.
func workerQueues(stores []string) map[string]int {
	qs := map[string]int{tasks.Queue: 1}
	for _, q := range tasks.StoreQueues(stores) {
		qs[q] = 1
	}
	return qs
}

// queueConsumers counts the running workers (asynq servers) per queue.
func queueConsumers(ins *asynq.Inspector) (map[string]int, error) {
	servers, err := ins.Servers()
	if err != nil {
		return nil, err
	}
	n := map[string]int{}
	for _, s := range servers {
		for q := range s.Queues {
			n[q]++
		}
	}
	return n, nil
}
