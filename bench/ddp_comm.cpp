// The cost of a data-parallel step (optimizer/data_parallel.hpp over comm::mpi), per mode: the
// median time of ascend() + descend(), the part of it spent inside the collectives (a wrapper
// around the communicator times every call; waiting for a slower rank counts as communication),
// the rest (the local passes and flatmin's packing and rank-ordered sums), and the bytes a rank
// sends per step. Beside it, in the same run, the one-process step of the same composition over
// the same N on each rank alone, and a copy of the gradient over MPI_Allreduce (MPI_SUM, the
// engine's own reduction: what a user who averages with an all-reduce pays, without flatmin's
// fixed order).
//
//   mpirun -np 2 build/test/bench/bench_ddp [--n N] [--tensors K] [--steps S]
//
// Defaults: N = 10^7 floats in K = 8 tensors, S = 15 steps after 3 warm-up steps. The gradient is
// written between the timed calls and not timed. Step, collective and local times are medians
// over the steps (FSAM's refresh steps, one in five, show in the mean column). Rank 0 prints a
// Markdown table. Without mpirun it is one rank (every mode is then the one-process run, and the
// collectives are copies).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <flatmin/comm/mpi.hpp>
#include <flatmin/flatmin.hpp>
#include <flatmin/optimizer/data_parallel.hpp>
#include <string>
#include <vector>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

/// comm::mpi with a stopwatch: the seconds spent in its collectives.
struct timed_mpi {
  flatmin::comm::mpi inner;
  double* seconds;
  int rank() const { return inner.rank(); }
  int size() const { return inner.size(); }
  void all_gather(const void* s, void* r, std::size_t n) const {
    const double t0 = now();
    inner.all_gather(s, r, n);
    *seconds += now() - t0;
  }
  void all_to_all(const void* s, void* r, std::size_t n) const {
    const double t0 = now();
    inner.all_to_all(s, r, n);
    *seconds += now() - t0;
  }
};

struct problem {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> ps;
  problem(std::size_t n, std::size_t k) : w(k), g(k) {
    for (std::size_t t = 0; t < k; ++t) {
      const std::size_t m = n / k + (t < n % k ? 1 : 0);
      w[t].resize(m);
      g[t].resize(m);
      for (std::size_t i = 0; i < m; ++i) w[t][i] = 0.001f * static_cast<float>((i * 2654435761u + t) % 2001) - 1.f;
      ps.add("t" + std::to_string(t), w[t].data(), g[t].data(), {m});
    }
  }
  void fill(int rank) {  // a gradient that differs per rank and per entry (not timed)
    for (std::size_t t = 0; t < w.size(); ++t)
      for (std::size_t i = 0; i < w[t].size(); ++i)
        g[t][i] = 0.5f * w[t][i] + 0.01f * static_cast<float>((i + t + static_cast<std::size_t>(rank)) % 7);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct row {
  std::string what;
  double step_ms = 0, mean_ms = 0, comm_ms = 0, bytes = 0;
};

struct config {
  std::size_t n = 10'000'000, k = 8;
  int steps = 15, warm = 3;
};

/// Times `steps` steps of `opt` (ascend + descend, the gradient written between them untimed);
/// `comm_seconds` is the stopwatch of its communicator, or null.
template <class Opt>
row time_steps(Opt& opt, problem& p, const config& c, const double* comm_seconds, int rank) {
  std::vector<double> step, comm;
  for (int s = 0; s < c.warm + c.steps; ++s) {
    p.fill(rank);
    MPI_Barrier(MPI_COMM_WORLD);
    const double c0 = comm_seconds ? *comm_seconds : 0, t0 = now();
    opt.ascend();
    const double t1 = now();
    p.fill(rank);
    const double t2 = now();
    opt.descend();
    const double t3 = now();
    if (s >= c.warm) {
      step.push_back((t1 - t0) + (t3 - t2));
      comm.push_back(comm_seconds ? *comm_seconds - c0 : 0);
    }
  }
  row r;
  r.step_ms = 1e3 * median(step);
  r.comm_ms = 1e3 * median(comm);
  for (double x : step) r.mean_ms += 1e3 * x / static_cast<double>(step.size());
  return r;
}

template <class Opt, class Make>
void run_composition(const char* name, const Make& make, const config& c, std::vector<row>& out) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  {
    problem p(c.n, c.k);
    Opt one(p.ps, make());
    row r = time_steps(one, p, c, nullptr, rank);
    r.what = name;
    r.what += ", one process";
    out.push_back(r);
  }
  const std::pair<flatmin::parallel_mode, const char*> modes[] = {
      {flatmin::parallel_mode::global_perturbation, "global"},
      {flatmin::parallel_mode::per_worker_perturbation, "per-worker"},
      {flatmin::parallel_mode::sharded, "sharded"}};
  for (const auto& [mode, label] : modes) {
    problem p(c.n, c.k);
    double seconds = 0;
    flatmin::data_parallel<Opt, timed_mpi> dp(p.ps, make(), timed_mpi{flatmin::comm::mpi{}, &seconds}, {.mode = mode});
    const auto sent0 = dp.bytes_sent();
    row r = time_steps(dp, p, c, &seconds, rank);
    r.bytes = static_cast<double>(dp.bytes_sent() - sent0) / (c.warm + c.steps);
    r.what = name;
    r.what += ", ";
    r.what += label;
    out.push_back(r);
  }
}

/// The engine's own average: MPI_Allreduce(MPI_SUM) of N floats in place, then a scale.
row allreduce_row(const config& c) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<float> g(c.n, 1.f);
  std::vector<double> t;
  for (int s = 0; s < c.warm + c.steps; ++s) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now();
    MPI_Allreduce(MPI_IN_PLACE, g.data(), static_cast<int>(c.n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    for (auto& x : g) x *= 1.f / static_cast<float>(size);
    if (s >= c.warm) t.push_back(now() - t0);
  }
  row r;
  r.what = "MPI_Allreduce of g (engine order), for scale";
  r.step_ms = r.mean_ms = r.comm_ms = 1e3 * median(t);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--n") c.n = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--tensors") c.k = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--steps") c.steps = std::atoi(argv[i + 1]);
  }
  c.k = std::max<std::size_t>(1, std::min(c.k, c.n));
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<row> rows;
  const flatmin::base::adamw adamw{.lr = 1e-3, .weight_decay = 1e-2};
  run_composition<flatmin::sam_t<float, flatmin::base::adamw>>(
      "SAM-AdamW", [&] { return flatmin::sam_options{.rho = 0.05}.compose<flatmin::perturb::l2>(adamw); }, c, rows);
  // FSAM refreshing its mask every 5 steps: a global top-k (summed histograms) in sharded mode.
  run_composition<flatmin::fsam_t<float, flatmin::base::adamw>>(
      "FSAM-AdamW (keep 0.1, refresh every 5)",
      [&] { return flatmin::fsam_options{.keep = 0.1, .refresh_every = 5}.compose(adamw); }, c, rows);
  rows.push_back(allreduce_row(c));
  if (rank == 0) {
    std::printf("N = %zu floats in %zu tensors, %d ranks, median of %d steps (ascend + descend)\n\n", c.n, c.k,
                size, c.steps);
    std::printf("| composition, mode | step (ms) | in collectives (ms) | local (ms) | mean step (ms) | "
                "sent per step (MB) |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (const auto& r : rows)
      std::printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", r.what.c_str(), r.step_ms, r.comm_ms,
                  r.step_ms - r.comm_ms, r.mean_ms, r.bytes / 1e6);
  }
  MPI_Finalize();
  return 0;
}
