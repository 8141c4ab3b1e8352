"""The model: BERT, adapters and heads as Keras layers, BertAdapterModel, adapter directories, the multi-task model."""
