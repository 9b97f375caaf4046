// param_set validation (null pointers, zero size, duplicate names, shape/size mismatch, value ==
// grad, overlapping tensors, empty set) and the buffer types it accepts (Eigen::Matrix / Map /
// Ref, std::span, std::vector) or rejects (strided Eigen views).
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <span>

#include "support/problems.hpp"

using flatmin::param_set;
using flatmin::tensor_options;

TEST_CASE("param_set: bad views are rejected with invalid_argument naming the tensor") {
  std::vector<float> a(6), ga(6), b(4), gb(4);
  param_set<float> ps;
  CHECK_THROWS_AS(ps.add("x", nullptr, ga.data(), {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), nullptr, {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {0}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {3, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("", a.data(), ga.data(), {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), a.data(), {6}), std::invalid_argument);  // value == grad
  CHECK(ps.empty());
  try {
    ps.add("layer.weight", nullptr, ga.data(), {6});
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("layer.weight") != std::string::npos);
  }

  ps.add("x", a.data(), ga.data(), {2, 3});
  CHECK_THROWS_AS(ps.add("x", b.data(), gb.data(), {4}), std::invalid_argument);  // duplicate name
  CHECK(ps.size() == 1);

  // buffers: sizes must agree
  CHECK_THROWS_AS(ps.add("y", b, ga), std::invalid_argument);
  CHECK(ps.size() == 1);  // a rejected view leaves the set as it was, its name free
  // an explicit shape must match the buffers
  CHECK_THROWS_AS(ps.add("y", b, gb, std::vector<std::size_t>{3}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("y", b, gb, std::vector<std::size_t>{2, 3}), std::invalid_argument);
  CHECK(ps.size() == 1);
  ps.add("y", b, gb, {.weight_decay = false});  // designated options, no ambiguity
  CHECK(ps[1].shape == std::vector<std::size_t>{4});
  CHECK_FALSE(ps[1].options.weight_decay);
  CHECK(ps.size() == 2);
  CHECK(ps.numel() == 10);
  CHECK_NOTHROW(ps.validate());
}

TEST_CASE("param_set: empty and overlapping sets are rejected by validate() and by the optimizer") {
  param_set<float> empty;
  CHECK_THROWS_AS(empty.validate(), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sam(empty, flatmin::base::sgd{}), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sgd(empty), std::invalid_argument);

  std::vector<float> buf(20), gbuf(20);
  {  // two values overlapping
    param_set<float> ps;
    ps.add("a", buf.data(), gbuf.data(), {10});
    ps.add("b", buf.data() + 5, gbuf.data() + 10, {10});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
    CHECK_THROWS_AS(flatmin::asam(ps, flatmin::base::adamw{}), std::invalid_argument);
  }
  {  // a value overlapping another tensor's gradient
    param_set<float> ps;
    ps.add("a", buf.data(), buf.data() + 10, {10});
    ps.add("b", buf.data() + 15, gbuf.data(), {5});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
  }
  {  // a value overlapping its own gradient
    param_set<float> ps;
    ps.add("a", buf.data(), buf.data() + 5, {10});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
  }
  {  // adjacent is fine
    param_set<float> ps;
    ps.add("a", buf.data(), gbuf.data(), {10});
    ps.add("b", buf.data() + 10, gbuf.data() + 10, {10});
    CHECK_NOTHROW(ps.validate());
    CHECK_NOTHROW(flatmin::sam(ps, flatmin::base::sgd{}));
  }
}

TEST_CASE("param_set: Eigen matrices, Map, Ref, std::span and std::vector are accepted with their shapes") {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(3, 4), dW = Eigen::MatrixXf::Zero(3, 4);
  Eigen::VectorXf v = Eigen::VectorXf::Random(5), dv = Eigen::VectorXf::Zero(5);
  std::vector<float> m_buf(6, 1.f), dm_buf(6);
  Eigen::Map<Eigen::MatrixXf> M(m_buf.data(), 2, 3), dM(dm_buf.data(), 2, 3);
  Eigen::Matrix<float, 2, 2, Eigen::RowMajor> R, dR;
  Eigen::Ref<Eigen::Matrix<float, 2, 2, Eigen::RowMajor>> Rr(R), dRr(dR);
  std::vector<float> s_buf(7), ds_buf(7), vec(8), dvec(8);
  std::span<float> S(s_buf), dS(ds_buf);

  param_set<float> ps;
  CHECK(ps.add("W", W, dW).shape == std::vector<std::size_t>{3, 4});
  CHECK(ps.add("v", v, dv).shape == std::vector<std::size_t>{5, 1});
  CHECK(ps.add("M", M, dM).shape == std::vector<std::size_t>{2, 3});
  CHECK(ps.add("R", Rr, dRr, tensor_options{.weight_decay = false}).shape == std::vector<std::size_t>{2, 2});
  CHECK(ps.add("S", S, dS).shape == std::vector<std::size_t>{7});
  CHECK(ps.add("vec", vec, dvec, std::vector<std::size_t>{2, 4}).shape == std::vector<std::size_t>{2, 4});
  CHECK(ps.size() == 6);
  CHECK(ps.numel() == 12 + 5 + 6 + 4 + 7 + 8);
  CHECK(ps[0].value == W.data());
  CHECK(ps[0].grad == dW.data());
  CHECK(ps[2].value == m_buf.data());
  CHECK_FALSE(ps[3].options.weight_decay);
  CHECK(ps[3].flags() == (flatmin::tensor_flags::perturb | flatmin::tensor_flags::adaptive |
                          flatmin::tensor_flags::mask_eligible));

  // and an optimizer trains them in place
  auto opt = flatmin::sgd(ps, {.lr = 0.5});
  dW.setConstant(1.f);
  const Eigen::MatrixXf W0 = W;
  opt.descend();
  CHECK((W.array() == W0.array() - 0.5f).all());
}

TEST_CASE("param_set: strided Eigen views are rejected") {
  std::vector<float> buf(24), gbuf(24);
  using strided = Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>>;
  strided v(buf.data(), 6), gv(gbuf.data(), 6);
  param_set<float> ps;
  CHECK_THROWS_AS(ps.add("strided", v, gv), std::invalid_argument);
  Eigen::Map<Eigen::VectorXf> dense_g(gbuf.data(), 6);
  CHECK_THROWS_AS(ps.add("strided", v, dense_g), std::invalid_argument);

  // a block of a larger matrix: outer stride 5 ≠ 3 rows
  using outer = Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
  outer blk(buf.data(), 3, 2, Eigen::OuterStride<>(5)), gblk(gbuf.data(), 3, 2, Eigen::OuterStride<>(5));
  CHECK_THROWS_AS(ps.add("block", blk, gblk), std::invalid_argument);
  Eigen::MatrixXf big = Eigen::MatrixXf::Zero(5, 5), gbig = Eigen::MatrixXf::Zero(5, 5);
  Eigen::Ref<Eigen::MatrixXf, 0, Eigen::OuterStride<>> rb(big.block(0, 0, 2, 3)), grb(gbig.block(0, 0, 2, 3));
  CHECK_THROWS_AS(ps.add("ref_block", rb, grb), std::invalid_argument);
  CHECK(ps.empty());

  // an outer-strided map whose stride equals its rows is contiguous and fine
  outer ok(buf.data(), 3, 2, Eigen::OuterStride<>(3)), gok(gbuf.data(), 3, 2, Eigen::OuterStride<>(3));
  CHECK_NOTHROW(ps.add("ok", ok, gok));
}

TEST_CASE("param_set: a view in memory the backend cannot reach is a usage_error") {
  std::vector<float> a(4), ga(4);
  param_set<float> ps;
  ps.add("dev", a.data(), ga.data(), {4}, {}, flatmin::memory_space::device);
  CHECK_THROWS_AS(flatmin::sam<flatmin::backend::eigen>(ps, flatmin::base::sgd{}), flatmin::usage_error);
}

TEST_CASE("param_set: LoRA pairs are two tagged tensors") {
  std::vector<float> A(8 * 16), gA(8 * 16), B(16 * 8), gB(16 * 8);
  param_set<float> ps;
  const auto& p = ps.add_lora_pair("attn.q", A.data(), gA.data(), {8, 16}, B.data(), gB.data(), {16, 8});
  CHECK(p.name == "attn.q");
  CHECK(ps.size() == 2);
  CHECK(ps[p.a].name == "attn.q.A");
  CHECK(ps[p.b].name == "attn.q.B");
  CHECK((ps[p.a].flags() & flatmin::tensor_flags::lora_a) != 0);
  CHECK((ps[p.b].flags() & flatmin::tensor_flags::lora_b) != 0);
  CHECK_THROWS_AS(ps.add_lora_pair("attn.q", A.data(), gA.data(), {8, 16}, B.data(), gB.data(), {16, 8}),
                  std::invalid_argument);
  // a bad second factor leaves no half-registered pair behind
  std::vector<float> C(4), gC(4), D(4), gD(4);
  CHECK_THROWS_AS(ps.add_lora_pair("attn.k", C.data(), gC.data(), {2, 2}, nullptr, gB.data(), {16, 8}),
                  std::invalid_argument);
  CHECK(ps.size() == 2);
  CHECK(ps.lora_pairs().size() == 1);
  CHECK_NOTHROW(ps.add_lora_pair("attn.k", C.data(), gC.data(), {2, 2}, D.data(), gD.data(), {2, 2}));
  CHECK_NOTHROW(ps.validate());
}
