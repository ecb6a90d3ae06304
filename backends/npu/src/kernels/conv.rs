//! int8 conv2d (NHWC) placeholder until the loader lands.
