"""The stages the subcommands run: prune, sparse prune, evaluation, fine-tuning, the pipeline, reports."""
