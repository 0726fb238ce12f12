// How many CPUs this process may run on: the CPUs in its affinity mask
// (taskset, systemd's CPUAffinity=, a container's cpuset), as nproc counts
// them, not every CPU the machine has. Worker pools size themselves by it,
// so a daemon confined to 4 of 64 cores starts threads for 4.
#pragma once

#include <cstddef>

namespace keywarden::pki {

// CPUs in the calling thread's affinity mask; std::thread::hardware_concurrency()
// when the mask cannot be read; at least 1.
size_t UsableCores();

}  // namespace keywarden::pki
