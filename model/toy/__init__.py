"""The toy world and the small model trained on it: synthetic scenes of coloured shapes.

toy.scenes draws scenes and says what a correct label for each task is; toy.train trains
the model shipped in examples/toy-cogvlm/ on them. Tests, the demo and the benchmark use both.
"""
