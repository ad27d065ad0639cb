"""Test doubles: what tests and benchmarks use in place of things that cannot run here. They live
under tests/ so that no product package (and no Docker image) carries them.

- `doubles.moonshot.FakeMoonshot`: a local Moonshot-compatible HTTP server with fault injection
  (the Kimi service itself cannot be reached from a test).
- `doubles.examples.sample_examples`: a seeded synthetic approved set for finetune tests and benches.
- `doubles.personal_data`: planted personal data (valid IDs, cards, phones...) and look-alikes for the
  privacy tests and bench.

Benchmarks import them with `tests/` on sys.path (see bench/).
"""
