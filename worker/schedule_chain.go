package worker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// ParseAfterSchedule validates a schedule whose job is queued when
// schedule `after`'s job is queued, chained after it (`after:` instead of
// `cron:` in the config): it runs only if that job succeeds. Check the
// whole set with ValidateChains.
func ParseAfterSchedule(schedName, after string, p tasks.Payload) (Schedule, error) {
	if !scheduleName.MatchString(schedName) {
		return Schedule{}, fmt.Errorf("%w schedule name %q: letters, digits, '_', '.', '-', at most 64", name.ErrInvalid, schedName)
	}
	if !scheduleName.MatchString(after) {
		return Schedule{}, fmt.Errorf("%w schedule %s: after %q: not a schedule name", name.ErrInvalid, schedName, after)
	}
	if p == nil {
		return Schedule{}, fmt.Errorf("%w schedule %s: no task", name.ErrInvalid, schedName)
	}
	if err := p.Validate(); err != nil {
		return Schedule{}, fmt.Errorf("schedule %s: %w", schedName, err)
	}
	return Schedule{Name: schedName, Spec: "after " + after, After: after, Payload: p}, nil
}

// ValidateChains checks that every `after` names a schedule and that no
// chain of them forms a cycle.
func ValidateChains(scheds []Schedule) error {
	byName := map[string]Schedule{}
	for _, s := range scheds {
		byName[s.Name] = s
	}
	for _, s := range scheds {
		if s.After == "" {
			continue
		}
		if _, ok := byName[s.After]; !ok {
			return fmt.Errorf("%w schedule %s: after %q: no such schedule", name.ErrInvalid, s.Name, s.After)
		}
		path := []string{s.Name}
		seen := map[string]bool{s.Name: true}
		for cur := byName[s.After]; ; cur = byName[cur.After] {
			path = append(path, cur.Name)
			if seen[cur.Name] {
				return fmt.Errorf("%w schedule %s: after %q forms a cycle: %s", name.ErrInvalid, s.Name, s.After, strings.Join(path, " → "))
			}
			seen[cur.Name] = true
			if cur.After == "" {
				break
			}
		}
	}
	return nil
}

// fireAfter queues the schedules chained after parent, whose job was just
// queued as task parentID, and theirs in turn.
func (s *Scheduler) fireAfter(ctx context.Context, parent Schedule, parentID string, at time.Time) {
	for _, sc := range s.schedules {
		if sc.After != parent.Name {
			continue
		}
		info, err := s.enq.EnqueueAfter(ctx, sc.Payload, []string{parentID})
		s.queued(ctx, sc, at, info, err)
	}
}
