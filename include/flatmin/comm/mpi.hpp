#pragma once
/// @file mpi.hpp
/// `comm::mpi`: a communicator over an MPI-3 communicator the caller owns (MPI_COMM_WORLD or a
/// sub-communicator); flatmin never initialises, duplicates or finalises MPI. Header-only; include
/// it only where MPI is used and link the CMake target `flatmin::mpi` (find_package(MPI); built
/// when MPI is found, like flatmin::torch).
///
/// Only MPI_Allgather and MPI_Alltoall on MPI_BYTE are used (no MPI_SUM: see comm/communicator.hpp).
/// A block larger than INT_MAX bytes is refused (std::length_error); flatmin's own traffic is
/// bucketed well below that (`data_parallel_options::bucket_bytes`). An MPI error code is turned
/// into std::runtime_error when the communicator's error handler returns one (the MPI default,
/// MPI_ERRORS_ARE_FATAL, aborts the job instead).

#include <climits>
#include <cstddef>
#include <stdexcept>
#include <string>

#if !defined(OMPI_SKIP_MPICXX)
#define OMPI_SKIP_MPICXX 1  // the C API is all flatmin uses; the deprecated C++ bindings only warn
#endif
#if !defined(MPICH_SKIP_MPICXX)
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "communicator.hpp"

namespace flatmin::comm {

class mpi {
 public:
  static constexpr const char* name = "mpi";

  /// Binds to `c` (not duplicated: the caller's communicator must outlive this object and must not
  /// be used by another thread while flatmin communicates). MPI must be initialised.
  explicit mpi(MPI_Comm c = MPI_COMM_WORLD) : comm_(c) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) throw std::logic_error("flatmin::comm::mpi: MPI_Init has not been called");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }

  void all_gather(const void* send, void* recv, std::size_t n) const {
    check(MPI_Allgather(send, count(n), MPI_BYTE, recv, count(n), MPI_BYTE, comm_), "MPI_Allgather");
  }
  void all_to_all(const void* send, void* recv, std::size_t n) const {
    check(MPI_Alltoall(send, count(n), MPI_BYTE, recv, count(n), MPI_BYTE, comm_), "MPI_Alltoall");
  }

 private:
  static int count(std::size_t n) {
    if (n > static_cast<std::size_t>(INT_MAX))
      throw std::length_error("flatmin::comm::mpi: a block of " + std::to_string(n) +
                              " bytes exceeds MPI's int count (lower data_parallel_options::bucket_bytes)");
    return static_cast<int>(n);
  }
  static void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw std::runtime_error(std::string("flatmin::comm::mpi: ") + what +
                             " failed: " + std::string(msg, len));
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

static_assert(communicator<mpi>);

}  // namespace flatmin::comm
