"""Custom tinygrad kernels and what runs them.

lstm      the recurrence: forward and backward through time, weight gradients (CPU family)
gpu       the same kernels shaped for a GPU (workgroups, local memory, barriers)
family    which family a device gets
step      one training step: forward, head and loss, backward, weight gradients
adam      Adam over every parameter in one kernel
layout    PackedBatch: the one buffer a step or a forward pass uploads
staging   filling and reading device buffers without tinygrad's scheduler
threads   the CPU kernels' slices on every core, 512-bit vectors, denormals flushed (cpu_threads)
replay    a captured training step called as its compiled programs, without the jit's checks
workers   tinygrad's compile workers, proof against a process group's SIGTERM
programs  finished programs kept on disk, so a new process generates no code it made before
indices   64-bit index arithmetic in CPU code, which newer clangs need to vectorise it
"""

from spiralctl.kernels import indices

indices.install()
