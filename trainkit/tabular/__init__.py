"""What the tabular recipes share (dropout and at-risk, engagement), so that each recipe folder
imports only `trainkit` and itself and `trainkit init` can copy one alone:

    tables       CSV tables, plain or gzipped, with errors that name the file, line and column
    oulad        reading OULAD (students, daily clicks, features, day sequences) and its at-risk rows
    datamodule   TabularDataModule: stratified splits and folds, preprocessing fitted on the
                 training rows, class balancing, batches
    layers       FeatureEncoder (numbers + one embedding per categorical column) and mlp blocks
    objective    ClassifierObjective: weighted cross-entropy, exact AUC/accuracy/F1 across ranks
    tiny_data    small files in UCI's and OULAD's real formats, for tests and smoke tests
"""
