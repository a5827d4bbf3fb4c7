package worker

import "context"

// handOver releases or fails the tasks chained after id.
func (w *Worker) handOver(ctx context.Context, id string) {}
