// Package promreg registers collectors on an injected registry so that a
// second component built on the same registry (two workers' stores, a
// scheduler beside a worker) shares the series instead of failing.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c, or returns the equal collector registered before.
// Other registration errors are programming errors, hence the panic (as
// with prometheus.MustRegister).
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old
		}
	}
	panic(err)
}
