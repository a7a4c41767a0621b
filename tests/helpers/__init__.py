"""Code the tests share (not tests): tiny models, data and command lines, the upstream suites' loader."""
