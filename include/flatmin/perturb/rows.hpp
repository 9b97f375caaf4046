#pragma once
/// @file rows.hpp
/// `perturb::row_table<T, Backend>`: the rows of every tensor of a layout (kernels/rows.hpp;
/// backend::layout::host_row_lengths), in the backend's memory, for the perturbations that work
/// row by row (perturb::gaussian, perturb::centralized). Not a policy: a piece of their states.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../backend/layout.hpp"
#include "../kernels/rows.hpp"

namespace flatmin::perturb {

template <class T, class Backend>
class row_table {
 public:
  explicit row_table(const backend::layout<T, Backend>& l) {
    const auto& rec = l.host_tensors();
    const auto& lens = l.host_row_lengths();
    std::vector<kernels::row_table_entry> table;
    std::vector<std::uint64_t> row_tensor;
    for (std::size_t t = 0; t < rec.size(); ++t) {
      const std::uint64_t len = lens[t] > 0 ? lens[t] : 1;
      table.push_back({rec[t].offset, len, rows_});
      const std::uint64_t n = rec[t].size / len;
      row_tensor.insert(row_tensor.end(), n, t);
      for (std::uint64_t r = 0; r < n; ++r)
        perturbed_length_.push_back((rec[t].flags & tensor_flags::perturb) ? static_cast<double>(len) : 0.0);
      rows_ += n;
    }
    table_ = Backend::from_host(table);
    row_tensor_ = Backend::from_host(row_tensor);
    device_perturbed_length_ = Backend::from_host(perturbed_length_);
  }

  std::uint64_t rows() const { return rows_; }
  /// Per tensor, its entry; per row, its tensor (in the backend's memory).
  const kernels::row_table_entry* table() const { return Backend::data(table_); }
  const std::uint64_t* row_tensor() const { return Backend::data(row_tensor_); }
  /// Per row, its length on a perturbed tensor, 0 on another (in the backend's memory).
  const double* perturbed_lengths() const { return Backend::data(device_perturbed_length_); }

 private:
  std::uint64_t rows_ = 0;
  std::vector<double> perturbed_length_;
  typename Backend::template vector<kernels::row_table_entry> table_;
  typename Backend::template vector<std::uint64_t> row_tensor_;
  typename Backend::template vector<double> device_perturbed_length_;
};

}  // namespace flatmin::perturb
