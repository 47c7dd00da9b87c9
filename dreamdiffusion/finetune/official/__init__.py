"""Import the official DreamDiffusion release (github bbaaii/DreamDiffusion) without running code from it.

    python -m dreamdiffusion.finetune.official import checkpoint_best.pth --out models/finetune

`unpickle`: a restricted unpickler (tensors, numpy arrays, plain containers, config stand-ins);
`mapping`: every checkpoint key mapped or dropped with a reason; `convert`: the output folders.
"""
