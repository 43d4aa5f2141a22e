"""The stages the subcommands run: one entry function each (run_evaluate, run_prune, run_finetune,
run_pipeline) that checks its settings and guards its folder, and the composable steps they share
(prune_model, prune_structures, prune_sparse, finetune_model, evaluate_model). They stand on
:mod:`prunelight.loops`, never on the trainer."""
