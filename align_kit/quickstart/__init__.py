"""The quickstart: a tiny Llama-architecture model, a character tokenizer built in process, and a task
family whose answers a program checks, so each stage's effect is a number (verifier accuracy)."""
