"""Training: a shared loop (:mod:`.loop`), in-memory training data (:mod:`.bank`) and one
task per stage. Every task runs on CPU, one GPU or under ``torchrun`` unchanged."""
