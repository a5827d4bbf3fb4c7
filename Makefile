# pbsq — see README.md. Every target installs what it needs (.ci/deps.sh).
GO      ?= go
GOBIN   := $(shell $(GO) env GOPATH)/bin
BIN     := bin/pbsq
PKGS    := ./...
FUZZTIME ?= 3s

.PHONY: all build demo test test-deps vet lint unit fuzz-short fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/pbsq

test-deps:
	@bash .ci/deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

lint: test-deps
	$(GOBIN)/staticcheck $(PKGS)

unit:
	PATH="$(GOBIN):$$PATH" $(GO) test -race -timeout 30m $(PKGS)

# Bounded fuzzing of every parser and decoder; `make fuzz` runs longer.
fuzz-short:
	@PATH="$(GOBIN):$$PATH" FUZZTIME=$(FUZZTIME) bash .ci/fuzz.sh

fuzz:
	@$(MAKE) fuzz-short FUZZTIME=60s

test: test-deps vet lint unit fuzz-short

demo: build
	@bash .ci/demo.sh

bench: test-deps build
	@PATH="$(GOBIN):$$PATH" bash .ci/bench.sh

# Long reliability runs: load with a lock audit, kill -9 storms, S3 faults
# (README "Reliability"); PBSQ_STRESS_DURATION sets the time per backend.
.PHONY: stress
stress: test-deps
	@PATH="$(GOBIN):$$PATH" bash .ci/stress.sh

clean:
	rm -rf bin
