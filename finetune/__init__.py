"""Stage 3, finetune: approved records -> LLaMA-Factory dataset -> LoRA/QLoRA run -> merged model -> eval.

    prepare.prepare / check.check_dataset   dataset files, split by document, read back by LLaMA-Factory
    rows, flat, pretrain                    each stage's rows (sft, rm, kto, ppo, pt), the CSV forms, the text
    mixing.mix / budget.model_size          the training split's composition, its tokens against the model
    config.write_train_config               the run's LLaMA-Factory YAML as data (defaults.yaml + overrides)
    train.train                             `llamafactory-cli train` with progress, resume, plain errors
    export.export                           `llamafactory-cli export`: the adapter merged into the base
    evaluate.evaluate                       base vs tuned on the test split, through distillery.runtime
    second_round.second_round               the tuned student answers its training prompts, the teacher corrects
                                            it: correction records for qc, preference pairs for DPO
    step.STAGE                              finetune's part of `distill run`
    cli.main                                `distill finetune`
"""
