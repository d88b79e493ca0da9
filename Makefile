# The README's commands; CI runs the same words.
.PHONY: demo test ci

demo: ## run the bus: a local JetStream server, a group, a broadcast, events flowing
	scripts/demo.sh

test: ## every test, against real nats-server processes
	scripts/test.sh

ci: ## what CI runs: format, lints, every test
	bash .ci/run
