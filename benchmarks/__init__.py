"""Development tools beside the package: run from the repository root, never shipped in the wheel
(pyproject's wheel target packages `tracker` only). Their bodies come from
`tracker.testing`, the test kit the tests use too."""
