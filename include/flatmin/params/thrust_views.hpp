#pragma once
/// @file thrust_views.hpp
/// `param_set::add` for `thrust::device_vector` values and gradients: the views point into the
/// vectors' storage and are tagged `memory_space::device` (accepted by `backend::thrust`; under
/// CUDA rejected by `backend::eigen`). Include it only where Thrust is available.
///
///     thrust::device_vector<float> w(n), g(n);
///     params.add("fc.weight", w, g, {rows, cols}, {.weight_decay = true});

#include <thrust/device_vector.h>

#include "param_set.hpp"

namespace flatmin {

template <class T, class A>
struct buffer_traits<::thrust::device_vector<T, A>> {
  static constexpr memory_space space = memory_space::device;
  static T* data(::thrust::device_vector<T, A>& v) { return ::thrust::raw_pointer_cast(v.data()); }
  static std::size_t size(const ::thrust::device_vector<T, A>& v) { return v.size(); }
};

}  // namespace flatmin
