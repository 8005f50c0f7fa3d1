"""The RLHF operator: reconciles RLHFJob resources into KubeRay RayJobs.

Modules, one concern each:
- `naming`: names, labels and annotations the operator and its children share.
- `placement`: how the roles' GPUs pack into worker pods (pure).
- `policy`: the platform policy a job must meet (pure checks; the admin's file is read at start).
- `render`: the Kubernetes objects of one attempt of a job (pure; `rlhf render` prints them).
- `status`: RayJob status -> RLHFJob phase and conditions (pure).
- `decisions`: what one reconcile does: create, restart, fail, apply or refuse spec edits (pure).
- `kube`: the API calls (create-if-absent, status merge patches, events).
- `reconciler`: reads the cluster, asks `decisions`, applies the plan (one job at a time).
- `metrics`: the operator's Prometheus metrics.
- `handlers`: the kopf handlers (thin); `main`: `rlhf operator`.
"""
