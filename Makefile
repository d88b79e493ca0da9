# The README's commands; CI runs the same words.
.PHONY: run demo-sdk test ci bench

run: ## run the bus: bus-node dev on its own JetStream server, sample events flowing
	scripts/run.sh

demo-sdk: ## the SDK demo: an order service, a billing group of two, a broadcast dashboard
	scripts/demo.sh

test: ## every test, against real nats-server processes
	scripts/test.sh

ci: ## what CI runs: format, lints, deploy validation, every test
	bash .ci/run

bench: ## the bus against raw async-nats, R1 (BENCHMARKS.md; scripts/bench.sh --help)
	scripts/bench.sh
