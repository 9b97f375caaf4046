#pragma once
/// @file nccl.hpp
/// `comm::nccl`: a communicator of CUDA device memory over an NCCL communicator the caller owns
/// (made with ncclCommInitRank / ncclCommInitAll; flatmin never creates, splits or destroys it),
/// for data_parallel over backend::thrust under CUDA. Header-only; include it only where NCCL is
/// used and link the CMake target `flatmin::nccl` (built when nvcc and nccl.h / libnccl are found).
///
/// Collectives on bytes (ncclUint8), on the caller's stream (default: the legacy default stream,
/// on which backend::thrust's passes run):
/// - all_gather: ncclAllGather;
/// - all_to_all: one ncclSend and one ncclRecv per peer inside ncclGroupStart / ncclGroupEnd.
/// There is no ncclAllReduce, on purpose (comm/communicator.hpp: flatmin adds the ranks' values in
/// rank order itself, so that a run is bitwise reproducible).
///
/// Each collective is blocking, as comm::mpi's are: it returns once the stream has finished it
/// (cudaStreamSynchronize), so that data_parallel can read what arrived with the next pass, and a
/// failure is reported where it happened. An NCCL or CUDA error throws std::runtime_error with
/// NCCL's or CUDA's text; data_parallel's protocol then fails on every rank as for any collective
/// failure (an NCCL error is usually fatal to the communicator: abort it and start again).
///
/// `space = memory_space::device`: every buffer handed to it is device memory. data_parallel stages
/// its small host messages (votes, flags, statistics) through a device buffer.
///
/// Each rank must use its own GPU (NCCL refuses two ranks of one communicator on one device); the
/// caller selects it (cudaSetDevice) before creating the communicator and before each call.

#include <cstddef>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "../config.hpp"
#include "communicator.hpp"

namespace flatmin::comm {

class nccl {
 public:
  static constexpr const char* name = "nccl";
  static constexpr memory_space space = memory_space::device;

  /// Binds to `c` on `stream` (neither is owned: both must outlive this object).
  explicit nccl(ncclComm_t c, cudaStream_t stream = nullptr) : comm_(c), stream_(stream) {
    if (!c) throw std::invalid_argument("flatmin::comm::nccl: the NCCL communicator is null");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  ncclComm_t handle() const { return comm_; }
  cudaStream_t stream() const { return stream_; }

  void all_gather(const void* send, void* recv, std::size_t n) const {
    if (n == 0) return;
    check(ncclAllGather(send, recv, n, ncclUint8, comm_, stream_), "ncclAllGather");
    wait("ncclAllGather");
  }

  void all_to_all(const void* send, void* recv, std::size_t n) const {
    if (n == 0) return;
    const auto* s = static_cast<const unsigned char*>(send);
    auto* r = static_cast<unsigned char*>(recv);
    check(ncclGroupStart(), "ncclGroupStart");
    ncclResult_t rc = ncclSuccess;
    for (int p = 0; p < size_ && rc == ncclSuccess; ++p) {
      const std::size_t at = static_cast<std::size_t>(p) * n;
      rc = ncclSend(s + at, n, ncclUint8, p, comm_, stream_);
      if (rc == ncclSuccess) rc = ncclRecv(r + at, n, ncclUint8, p, comm_, stream_);
    }
    const ncclResult_t end = ncclGroupEnd();  // always closes the group, even after a failure
    check(rc, "ncclSend/ncclRecv");
    check(end, "ncclGroupEnd");
    wait("the all-to-all");
  }

 private:
  void wait(const char* what) const {
    const cudaError_t e = cudaStreamSynchronize(stream_);
    if (e != cudaSuccess)
      throw std::runtime_error(std::string("flatmin::comm::nccl: ") + what + ": " + cudaGetErrorString(e));
  }
  static void check(ncclResult_t rc, const char* what) {
    if (rc == ncclSuccess) return;
    throw std::runtime_error(std::string("flatmin::comm::nccl: ") + what +
                             " failed: " + ncclGetErrorString(rc));
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_ = 0;
  int size_ = 1;
};

static_assert(communicator<nccl>);
static_assert(space_of<nccl> == memory_space::device);

}  // namespace flatmin::comm
