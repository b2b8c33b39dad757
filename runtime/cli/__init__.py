"""Entry points: ``longclip-run``, ``longclip-report``, the spec'd operator (plain and DataFlow) and the console
(logging, summaries). Parse, assemble once, run."""
