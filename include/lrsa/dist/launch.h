#pragma once
// The launch as the environment describes it, read without calling MPI (header-only: config
// validation needs the world size before, and without, any MPI).
#include <cstdlib>

namespace lrsa::dist {

// Open MPI's mpirun sets OMPI_COMM_WORLD_{SIZE,RANK,LOCAL_RANK} in every process it starts;
// without mpirun this is rank 0 of a world of 1.
struct Launch {
  int rank = 0, world = 1, local_rank = 0;
  bool under_mpirun = false;
};

inline Launch detect_launch() {
  const auto env_int = [](const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
  };
  Launch l;
  l.under_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  l.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
  l.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
  l.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
  return l;
}

}  // namespace lrsa::dist
