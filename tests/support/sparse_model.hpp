#pragma once
// A small model for the sparse-mask tests: four tensors (eligible, ineligible-dense, eligible,
// not perturbed), random weights and gradients, and float64 reference helpers written plainly.
#include <flatmin/flatmin.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

namespace sparse_test {

struct model {
  // sizes: a (eligible), b (perturbed, not eligible), c (eligible), d (not perturbed)
  std::vector<std::size_t> sizes;
  std::vector<std::vector<double>> w, g;
  std::vector<std::size_t> offset;
  flatmin::param_set<double> ps;
  std::mt19937_64 rng;

  explicit model(std::vector<std::size_t> s = {37, 5, 50, 7}, unsigned seed = 7) : sizes(std::move(s)), rng(seed) {
    w.resize(sizes.size());
    g.resize(sizes.size());
    std::size_t off = 0;
    std::normal_distribution<double> nd(0, 1);
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      w[t].resize(sizes[t]);
      g[t].resize(sizes[t]);
      for (auto& x : w[t]) x = nd(rng);
      offset.push_back(off);
      off += sizes[t];
    }
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      flatmin::tensor_options o;
      if (t % 4 == 1) o.mask_eligible = false;
      if (t % 4 == 3) o.perturb = false;
      ps.add("t" + std::to_string(t), w[t], g[t], o);
    }
  }
  std::size_t numel() const { return offset.back() + sizes.back(); }
  bool eligible(std::size_t t) const { return t % 4 == 0 || t % 4 == 2; }
  bool perturbed(std::size_t t) const { return t % 4 != 3; }
  std::vector<double> flat_w() const {
    std::vector<double> r;
    for (auto& v : w) r.insert(r.end(), v.begin(), v.end());
    return r;
  }
  std::vector<double> flat_g() const {
    std::vector<double> r;
    for (auto& v : g) r.insert(r.end(), v.begin(), v.end());
    return r;
  }
  void set_g(const std::vector<double>& flat) {
    std::size_t k = 0;
    for (auto& v : g)
      for (auto& x : v) x = flat[k++];
  }
  /// Random gradient, no zero entries (so that every perturbed entry moves).
  std::vector<double> random_g() {
    std::normal_distribution<double> nd(0, 1);
    std::vector<double> r(numel());
    for (auto& x : r) {
      x = nd(rng);
      if (x == 0) x = 1e-3;
    }
    return r;
  }
  std::size_t tensor_of(std::size_t i) const {
    std::size_t t = 0;
    while (t + 1 < offset.size() && i >= offset[t + 1]) ++t;
    return t;
  }
};

/// Indices whose value differs between two snapshots.
inline std::set<std::size_t> changed(const std::vector<double>& a, const std::vector<double>& b) {
  std::set<std::size_t> s;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) s.insert(i);
  return s;
}

/// The k largest scores (ties: lower index), as a set — by a full sort, the plain reference.
inline std::set<std::size_t> top_k_ref(const std::vector<std::pair<double, std::size_t>>& cand, std::size_t k) {
  auto c = cand;
  std::sort(c.begin(), c.end(), [](auto& x, auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
  std::set<std::size_t> s;
  for (std::size_t j = 0; j < std::min(k, c.size()); ++j) s.insert(c[j].second);
  return s;
}

/// Units of blocks of `b` entries of one tensor, numbered tensor by tensor.
struct block_units {
  std::vector<std::size_t> tensor, start, len;  // per unit
  block_units(const model& m, std::size_t b) {
    for (std::size_t t = 0; t < m.sizes.size(); ++t)
      for (std::size_t s = 0; s < m.sizes[t]; s += b) {
        tensor.push_back(t);
        start.push_back(m.offset[t] + s);
        len.push_back(std::min(b, m.sizes[t] - s));
      }
  }
  std::size_t size() const { return tensor.size(); }
};

}  // namespace sparse_test
