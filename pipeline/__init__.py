"""The Beam job around VGG16: options, inputs, the labelling transforms, the output tables, search."""

# Every Beam metric of the job (counters, distributions) lives in this namespace.
METRICS_NAMESPACE = "vgg16"
