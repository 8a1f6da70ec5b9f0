"""Dynamic/static classification of point tracks: the weight-free geometric classifier, the
paper's learned trajectory transformer and its input features, and probability smoothing.

Nothing is imported here, so that the weight-free path does not pull in torch.
"""
