"""The composition root: settings assembled from the parts, the Platform component,
the stack outputs contract. The only package that may import both infra/ and
workloads/ (docs/architecture.md)."""
