// C++ test of the native lowrank_mm and codebook_mm through the dispatcher, on both CPU paths
// (PYCOMPRESS_CPU_ISA=scalar and auto): lowrank_mm against two ATen matmuls, codebook_mm against x w^T of
// the weight decoded here by the layout rule (4-bit: element k in the low nibble of byte k / 2 when k is
// even, the high nibble when odd; 8-bit: one index per byte), in float32 and float16.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED %s\n", what.c_str());
    ++failures;
  }
}

std::string shape(const char* isa, int64_t M, int64_t N, int64_t K) {
  return std::string(" [") + isa + "] M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

using Mm4 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);

at::Tensor call(const char* name, const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                const std::optional<at::Tensor>& bias) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Mm4>();
  return op.call(a, b, c, bias);
}

bool close(const at::Tensor& out, const at::Tensor& want) {
  return out.sizes() == want.sizes() && at::allclose(out, want, 1e-4, 1e-4);
}

void check_lowrank(const char* isa, int64_t M, int64_t N, int64_t K, int64_t r) {
  const std::string what = shape(isa, M, N, K) + " r=" + std::to_string(r);
  auto x = at::randn({M, K});
  auto v = at::randn({r, K}) / std::sqrt(static_cast<double>(K));
  auto u = at::randn({N, r}) / std::sqrt(static_cast<double>(r));
  auto bias = at::randn({N});
  auto want = at::addmm(bias, at::matmul(x, v.t()), u.t());
  expect(close(call("pycompress_C::lowrank_mm", x, v, u, bias), want), "lowrank_mm" + what);
  // float16: t is rounded to float16 between the two products, as two float16 matmuls do.
  auto xh = x.to(at::kHalf);
  auto vh = v.to(at::kHalf);
  auto uh = u.to(at::kHalf);
  auto t = at::matmul(xh.to(at::kFloat), vh.to(at::kFloat).t()).to(at::kHalf).to(at::kFloat);
  auto want_h = at::matmul(t, uh.to(at::kFloat).t());
  auto out = call("pycompress_C::lowrank_mm", xh, vh, uh, std::nullopt);
  expect(out.scalar_type() == at::kHalf && at::allclose(out.to(at::kFloat), want_h, 1e-2, 1e-2),
         "lowrank_mm float16" + what);
}

// (idx packed, dense weight) of random indices into codebook [G, 2^bits].
std::pair<at::Tensor, at::Tensor> random_codebook_weight(int64_t N, int64_t K, int bits, const at::Tensor& codebook) {
  auto indices = at::randint(0, 1 << bits, {N, K}, at::kLong);
  auto dense = codebook.size(0) == 1 ? codebook[0].index_select(0, indices.reshape({-1})).reshape({N, K})
                                     : at::gather(codebook, 1, indices);
  if (bits == 8) {
    return {indices.to(at::kByte), dense};
  }
  auto padded = K % 2 ? at::cat({indices, at::zeros({N, 1}, at::kLong)}, 1) : indices;
  auto pairs = padded.reshape({N, -1, 2});
  auto packed = pairs.select(2, 0).bitwise_or(pairs.select(2, 1).mul(16));
  return {packed.to(at::kByte).contiguous(), dense};
}

void check_codebook(const char* isa, int64_t M, int64_t N, int64_t K, int bits, bool per_channel) {
  const std::string what = shape(isa, M, N, K) + " bits=" + std::to_string(bits) + (per_channel ? " G=N" : " G=1");
  auto codebook = at::randn({per_channel ? N : 1, 1 << bits});
  auto [idx, dense] = random_codebook_weight(N, K, bits, codebook);
  auto x = at::randn({M, K});
  auto bias = at::randn({N});
  expect(close(call("pycompress_C::codebook_mm", x, idx, codebook, bias), at::addmm(bias, x, dense.t())),
         "codebook_mm" + what);
  auto xh = x.to(at::kHalf);
  auto out = call("pycompress_C::codebook_mm", xh, idx, codebook.to(at::kHalf), std::nullopt);
  auto want = at::matmul(xh.to(at::kFloat), dense.to(at::kHalf).to(at::kFloat).t());
  expect(out.scalar_type() == at::kHalf && at::allclose(out.to(at::kFloat), want, 1e-2, 5e-2),
         "codebook_mm float16" + what);
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (const char* isa : {"scalar", "auto"}) {
    setenv("PYCOMPRESS_CPU_ISA", isa, 1);
    for (int64_t M : {1, 2, 3, 5, 8, 9, 17, 70, 150}) {
      check_lowrank(isa, M, 37, 100, 13);
      for (int bits : {4, 8}) {
        check_codebook(isa, M, 29, 83, bits, M % 2 == 0);
      }
    }
    check_lowrank(isa, 64, 96, 384, 96);
    check_codebook(isa, 40, 50, 600, 4, true);
    check_codebook(isa, 3, 50, 600, 8, false);
  }
  if (failures) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("lowrank and codebook C++ tests passed\n");
  return 0;
}
