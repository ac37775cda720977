//! Weights on the GPU: uploading from the host, importing from another device, lending a view,
//! and the checks of a weight's type and of the F32 vectors (norms, biases) the kernels read.

use super::types::cuda_type;
use super::{shape, BackendError, CudaBackend, CudaWeight, DeviceBuf, HostTensor, WeightView};
use crate::quant::GgmlType;

impl CudaBackend {
    pub(super) fn upload_weight_on_device(
        &self,
        t: &HostTensor<'_>,
    ) -> Result<CudaWeight, BackendError> {
        t.check_size()?;
        self.check_type(t.name, t.ty)?;
        let lease = self.charge(t.name, t.data.len() as u64)?;
        let data = self
            .stream
            .clone_htod(t.data)
            .map(|s| self.wrap(s))
            .map_err(|e| self.alloc_err(t.name, t.data.len() as u64, e))?;
        Ok(CudaWeight {
            name: t.name.to_string(),
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            data,
            lease,
        })
    }

    pub(super) fn weight_view_on_device<'a>(
        &'a self,
        w: &'a CudaWeight,
    ) -> Result<WeightView<'a>, BackendError> {
        Ok(WeightView {
            name: &w.name,
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            bytes: self.bytes_of(&w.data, w.data.len())?,
        })
    }

    pub(super) fn import_weight_on_device(
        &self,
        src: &WeightView<'_>,
    ) -> Result<CudaWeight, BackendError> {
        let len = src.bytes.len;
        src.check_size()?;
        self.check_type(src.name, src.ty)?;
        let lease = self.charge(src.name, len as u64)?;
        let mut data = self.alloc::<u8>(src.name, len)?;
        self.copy_in(&mut data.slice_mut(..), &src.bytes, src.name)?;
        Ok(CudaWeight {
            name: src.name.to_string(),
            ty: src.ty,
            rows: src.rows,
            cols: src.cols,
            data,
            lease,
        })
    }

    /// Refuses weight types the kernels do not handle.
    pub(super) fn check_type(&self, name: &str, ty: GgmlType) -> Result<(), BackendError> {
        if cuda_type(ty).is_none() {
            return Err(BackendError::UnsupportedType {
                device: self.name.clone(),
                ty,
                tensor: name.to_string(),
            });
        }
        Ok(())
    }

    /// The f32 values of a 1-row (or `len`-element) F32 weight, for norms and biases.
    pub(super) fn f32_vector<'w>(
        &self,
        op: &'static str,
        w: &'w CudaWeight,
        len: usize,
    ) -> Result<&'w DeviceBuf<u8>, BackendError> {
        if w.ty != GgmlType::F32 {
            return Err(self.unsupported(w));
        }
        if w.rows * w.cols != len {
            return Err(shape(
                op,
                format!("{} has {} values, need {len}", w.name, w.rows * w.cols),
            ));
        }
        Ok(&w.data)
    }
}
