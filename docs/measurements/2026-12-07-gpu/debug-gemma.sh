# gemma debug: each tiny build alone, then both, without the sanitizer
mkdir -p /tmp/g2x && tar xJf .carry/gd/gp2.tar.xz -C /tmp/g2x && tar xJf .carry/gd/tvm_rt.tar.xz -C /tmp/g2x
mkdir -p /tmp/ember-pkgs && ln -sfn $PWD /tmp/ember-pkgs/ember
for m in llama_q8 gemma2; do
  rm -rf /tmp/g2y && mkdir -p /tmp/g2y && cp -r /tmp/g2x/gp2/$m /tmp/g2y/
  PYTHONPATH=/tmp/ember-pkgs:/tmp/g2x/tvm_rt TVM_USE_RUNTIME_LIB=1 timeout 60 python3 tools/gemv_parity.py check /tmp/g2y > $OUT/$m.out 2> $OUT/$m.err
  echo "$m rc=$?"; cut -c1-400 $OUT/$m.out; tail -1 $OUT/$m.err | cut -c1-200
done
