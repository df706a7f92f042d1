"""Models below the components: the recipe's ``student`` section (``config``), building and
loading students and reference models (``student``), GGUF checkpoints (``gguf``) and the
pre-trained tiny base (``pretrain``)."""
